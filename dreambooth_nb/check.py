"""`python -m dreambooth_nb.check FOLDER [--resolution N]`: check a folder of photos before training, changing nothing.

Prints the same table as db.check_images (each file's size, mode, verdict and notes); exit code 0 when training
could use at least one file, 2 when none (with what to do).
"""

from __future__ import annotations

from .common.commands import QuietParser, run_command


def main(argv: list[str] | None = None) -> int:
    parser = QuietParser(prog="python -m dreambooth_nb.check", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the folder of photos (instance or class images)")
    parser.add_argument("--resolution", type=int, default=512, help="training size in pixels; smaller photos are flagged")
    args = parser.parse_args(argv)

    def work() -> int:
        from .data import check_images

        report = check_images(args.folder, args.resolution)
        print(report)
        report.require_usable()
        return 0

    return run_command("check", work)


if __name__ == "__main__":
    raise SystemExit(main())
