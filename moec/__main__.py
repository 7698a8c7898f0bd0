"""``python -m moec``: the same command line as the installed ``moec`` (torchrun starts workers with
``-m moec smoke-run ...``)."""

from moec.cli import main

if __name__ == "__main__":
    main()
