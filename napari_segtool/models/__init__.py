"""Network architectures, one file each, looked up by name through :mod:`.registry`."""
