"""Task configurations (MONAI Label ``TaskConfig`` adapters) and the app's ``--conf`` settings."""
