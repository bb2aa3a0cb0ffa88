"""Fit a folder of images: python scripts/fit.py DATA_DIR [--artifacts DIR] [...]"""

import argparse

from pipeline import cli
from pipeline.config import BACKBONES, FitConfig, parse_count_or_word

DEFAULTS = FitConfig()


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the autoencoder on a folder of images and index them.")
    parser.add_argument("data_dir", help="folder of images; first-level subfolder names are labels")
    parser.add_argument("--artifacts", default="artifacts", help="output folder (default: artifacts/)")
    parser.add_argument("--backbone", choices=BACKBONES, default=DEFAULTS.backbone,
                        help="frozen ImageNet network the autoencoder learns over, or none to learn from pixels "
                             "alone (default %(default)s)")
    parser.add_argument("--image-size", type=int,
                        help="model input size in pixels (default: 224 with the backbone, 64 with none)")
    parser.add_argument("--autoencoder-size", type=int, default=DEFAULTS.autoencoder_size,
                        help="size the conv autoencoder works at (the input is area-downscaled to it)")
    parser.add_argument("--latent-dim", type=int, default=DEFAULTS.latent_dim)
    parser.add_argument("--filters", type=lambda s: tuple(int(f) for f in s.split(",")), default=DEFAULTS.filters,
                        help="channels of each stride-2 conv block, e.g. 32,64,128,256")
    parser.add_argument("--epochs", default=DEFAULTS.epochs,
                        help="maximum epochs (early stopping), or auto: about 100,000 training images in all")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--optimizer", choices=("adam", "adadelta"), default=DEFAULTS.optimizer)
    parser.add_argument("--loss", choices=("mse", "bce"), default=DEFAULTS.loss)
    parser.add_argument("--output-activation", choices=("sigmoid", "tanh"), default=DEFAULTS.output_activation)
    parser.add_argument("--noise", type=float, default=DEFAULTS.noise, help="denoising input noise (0 = off)")
    parser.add_argument("--consistency", type=float, default=DEFAULTS.consistency,
                        help="weight of the view-consistency term (0 = reconstruction alone)")
    parser.add_argument("--temperature", type=float, default=DEFAULTS.temperature,
                        help="temperature of the view-consistency term")
    parser.add_argument("--min-crop", type=float, default=DEFAULTS.min_crop,
                        help="smallest crop of a training view, as a share of the image area (1 = no crops)")
    parser.add_argument("--color-jitter", type=float, default=DEFAULTS.color_jitter,
                        help="colour jitter strength of the training views (0 = none)")
    parser.add_argument("--pooling", choices=("flatten", "max", "avg"), default=DEFAULTS.pooling,
                        help="how the latent vector is taken from the encoder")
    parser.add_argument("--whitening", type=float,
                        help="PCA whitening strength of each descriptor block: 0 none, 1 full "
                             "(default: 0 with the backbone, 0.5 with none)")
    parser.add_argument("--orientation-weight", type=float,
                        help="share of the orientation histogram in the descriptor, 0 = none "
                             "(default: 0.33 with the backbone, 0.5 with none)")
    parser.add_argument("--color-weight", type=float,
                        help="share of the colour histogram in the descriptor, 0 = none "
                             "(default: 0 with the backbone, 0.3 with none)")
    parser.add_argument("--query-expansion", type=int, default=DEFAULTS.query_expansion,
                        help="nearest neighbours averaged into each query before ranking (0 = none)")
    parser.add_argument("--no-flip", action="store_true", help="no mirrored training views")
    parser.add_argument("--clusters", default="auto", help="number of KMeans clusters, or auto")
    parser.add_argument("--metric", choices=("cosine", "euclidean"), default=DEFAULTS.metric)
    parser.add_argument("--nprobe", default="auto", help="clusters searched per query: a count, all, or auto")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    args = parser.parse_args()

    def run() -> None:
        from pipeline.fit import fit  # imported late: TensorFlow takes seconds to load

        config = FitConfig(
            backbone=args.backbone, image_size=args.image_size, color_weight=args.color_weight, autoencoder_size=args.autoencoder_size, latent_dim=args.latent_dim,
            filters=args.filters, epochs=parse_count_or_word(str(args.epochs), ("auto",)),
            batch_size=args.batch_size, learning_rate=args.learning_rate, optimizer=args.optimizer,
            loss=args.loss, output_activation=args.output_activation, noise=args.noise,
            consistency=args.consistency, temperature=args.temperature, min_crop=args.min_crop,
            color_jitter=args.color_jitter, flip_augment=not args.no_flip, pooling=args.pooling,
            whitening=args.whitening, orientation_weight=args.orientation_weight,
            query_expansion=args.query_expansion, clusters=parse_count_or_word(args.clusters, ("auto",)),
            metric=args.metric, nprobe=parse_count_or_word(args.nprobe, ("auto", "all")), seed=args.seed,
        )
        summary = fit(args.data_dir, args.artifacts, config)
        stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in summary.stage_seconds.items())
        print(f"fitted {summary.images} images ({len(summary.skipped)} skipped) in {summary.seconds:.1f}s: {stages}")
        print(f"{summary.epochs_run} epochs, {summary.clusters} clusters, nprobe {summary.nprobe} "
              f"(recall@10 vs exact search {summary.recall_at_10:.3f})")
        cli.print_outcome(summary.skipped, summary.artifacts)

    cli.run(run)


if __name__ == "__main__":
    main()
