"""The compile cache: a run whose training step compiled before loads it from disk and trains to the same weights;
anything that shapes the graph (batch size, model, method, a line of the package) compiles anew."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dreambooth_nb.common import graph_cache

TINY_RUN = ["--pretrained_model_name_or_path=tiny-random", "--resolution=32", "--max_train_steps=2",
            "--lr_warmup_steps=0", "--learning_rate=1e-3", "--seed=0", "--report_to=none"]


def train_in_fresh_process(graphs, output_dir, *flags) -> str:
    """`python -m dreambooth_nb.train` on the tiny model with the compile cache in `graphs`; its stderr."""
    env = {**os.environ, graph_cache.GRAPH_CACHE_ENV: str(graphs)}
    done = subprocess.run([sys.executable, "-m", "dreambooth_nb.train", *TINY_RUN, f"--output_dir={output_dir}", *flags],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def unet_weights(output_dir) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(output_dir / "unet" / "diffusion_pytorch_model.safetensors"))


def test_a_repeated_run_loads_its_step_and_a_changed_batch_compiles_anew(tmp_path):
    graphs = tmp_path / "graphs"
    first = train_in_fresh_process(graphs, tmp_path / "first")
    again = train_in_fresh_process(graphs, tmp_path / "again")  # another folder: graph-neutral
    bigger = train_in_fresh_process(graphs, tmp_path / "bigger", "--train_batch_size=2")
    assert "compiling the training step" in first and "compiled before" not in first
    assert "loading the training step compiled before" in again and "compiling the training step" not in again
    assert "compiling the training step" in bigger and "compiled before" not in bigger
    assert len(list(graphs.iterdir())) == 2  # one folder per graph: batch 1, batch 2
    loaded, compiled = unet_weights(tmp_path / "again"), unet_weights(tmp_path / "first")
    assert all(np.array_equal(loaded[k], compiled[k]) for k in compiled)


def test_the_key_changes_with_everything_that_shapes_the_graph():
    parts = {"config": {"train_batch_size": 1, "resolution": 32}, "method": "StableDiffusionMethod",
             "networks": {"unet": ["UNet2DConditionModel", ("conv_in.weight", (32, 4, 3, 3), "Float32", True)]}}
    changed = [{**parts, "config": {"train_batch_size": 2, "resolution": 32}},
               {**parts, "config": {"train_batch_size": 1, "resolution": 64}},
               {**parts, "method": "SDXLLoraAdapters"},
               {**parts, "networks": {"unet": ["UNet2DConditionModel", ("conv_in.weight", (64, 4, 3, 3), "Float32", True)]}},
               {**parts, "networks": {"unet": ["UNet2DConditionModel", ("conv_in.weight", (32, 4, 3, 3), "Float32", False)]}}]
    keys = [graph_cache.graph_key("train step", p) for p in [parts, *changed]]
    assert len(set(keys)) == len(keys)
    assert graph_cache.graph_key("train step", dict(parts)) == keys[0]


def test_a_changed_line_of_the_package_changes_every_key(monkeypatch):
    parts = {"config": {"train_batch_size": 1}}
    before = graph_cache.graph_key("train step", parts)
    monkeypatch.setattr(graph_cache, "package_source_digest", lambda: "another version of the code")
    assert graph_cache.graph_key("train step", parts) != before


@pytest.mark.parametrize("setting, on", [("0", False), ("1", True), (None, True)])
def test_the_cache_is_turned_off_by_zero_and_moved_by_a_folder(monkeypatch, tmp_path, setting, on):
    if setting is None:
        monkeypatch.delenv(graph_cache.GRAPH_CACHE_ENV, raising=False)
    else:
        monkeypatch.setenv(graph_cache.GRAPH_CACHE_ENV, setting)
    assert graph_cache.graph_cache_on() is on
    monkeypatch.setenv(graph_cache.GRAPH_CACHE_ENV, str(tmp_path / "elsewhere"))
    assert graph_cache.graphs_dir() == tmp_path / "elsewhere" and graph_cache.graph_cache_on()


def test_a_jupyter_kernel_answers_the_cell_after_a_cached_compile(monkeypatch, tmp_path):
    """MindSpore's own check of the entry script's imports rebuilt the `sys` module in a kernel, whose next cell then
    never answered; the cache lists the entry script alone."""
    import nbformat
    from nbclient import NotebookClient

    compile_cell = ("import numpy as np, mindspore as ms\nfrom mindspore import nn\n"
                    "from dreambooth_nb.common import graph_cache\nms.set_context(mode=ms.GRAPH_MODE)\n"
                    "class AddOne(nn.Cell):\n    def construct(self, x):\n        return x + 1\n"
                    "with graph_cache.cached_compile('add one', {'shape': [3]}):\n"
                    "    print(AddOne()(ms.Tensor(np.zeros(3, np.float32))).asnumpy().tolist())")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(compile_cell),
                                               nbformat.v4.new_code_cell("print('answered')")])
    monkeypatch.setenv(graph_cache.GRAPH_CACHE_ENV, str(tmp_path))  # the kernel inherits it
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()  # the old listing: a timeout here
    printed = ["".join(o.get("text", "")) for cell in notebook.cells for o in cell.outputs if o.get("name") == "stdout"]
    assert printed == ["[1.0, 1.0, 1.0]\n", "answered\n"]
    assert any(tmp_path.iterdir())  # the compile went through the cache
