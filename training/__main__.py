"""`python -m training`: flags first, then the thread settings the libraries read at import,
then the pipeline."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from training.options import parse_args

    args = parse_args(argv)
    # tokenizers (rayon) and OpenMP read these when they start their pools.
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if args.threads > 1 else "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    from training.pipeline import run

    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
