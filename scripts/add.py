"""Add new images to a fitted index without retraining: python scripts/add.py NEW_DIR [--artifacts DIR]"""

import argparse

from pipeline import cli


def main() -> None:
    parser = argparse.ArgumentParser(description="Embed new images with the fitted encoder and add them to the index.")
    parser.add_argument("new_dir", help="folder of new images; first-level subfolder names are labels")
    parser.add_argument("--artifacts", default="artifacts", help="fitted artifacts folder (default: artifacts/)")
    args = parser.parse_args()

    def run() -> None:
        from pipeline.add import add_images  # imported late: TensorFlow takes seconds to load

        summary = add_images(args.new_dir, args.artifacts)
        print(f"added {summary.added} images ({summary.already_indexed} already indexed, {len(summary.skipped)} "
              f"skipped) in {summary.seconds:.1f}s; {summary.images} indexed, nprobe {summary.nprobe}")
        cli.print_outcome(summary.skipped, summary.artifacts)

    cli.run(run)


if __name__ == "__main__":
    main()
