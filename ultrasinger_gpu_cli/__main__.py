"""``python -m ultrasinger_gpu_cli`` runs the ``ugpu`` command."""

from ultrasinger_gpu_cli.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess test
    main()
