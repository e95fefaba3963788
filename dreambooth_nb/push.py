"""Upload a trained model to the Hugging Face hub, into a PRIVATE repository unless --public is given.

`python -m dreambooth_nb.push OUTPUT_DIR --hub_model_id NAME [--hub_token T] [--public]`. Checkpoints, logs and
error.log stay local; the token is never printed or written anywhere.
"""

from __future__ import annotations

from .common.commands import QuietParser, run_command


def main(argv: list[str] | None = None) -> int:
    parser = QuietParser(prog="python -m dreambooth_nb.push", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="the --output_dir of a finished training run")
    parser.add_argument("--hub_model_id", help="the repository to create or update, e.g. your-name/sks-dog")
    parser.add_argument("--hub_token", help="a token with write access (default: HF_TOKEN, else the one saved by "
                                            "`huggingface-cli login`); never printed or saved")
    parser.add_argument("--public", action="store_true",
                        help="make the repository public (default: private, visible to you and your organisation only)")
    args = parser.parse_args(argv)

    def work() -> int:
        from .common.hub import push_folder, push_preflight, require_model_folder, resolve_token

        require_model_folder(args.output_dir)
        token = resolve_token(args.hub_token)
        push_preflight(args.hub_model_id, token, output_dir=args.output_dir, before_training=False)
        url = push_folder(args.output_dir, args.hub_model_id, token, private=not args.public)
        seen = "public" if args.public else "private: only you and your organisation see it; --public makes it public"
        print(f"pushed {args.output_dir} to {url} ({seen})")
        return 0

    return run_command("push", work)


if __name__ == "__main__":
    raise SystemExit(main())
