"""Service registries behind one interface (base.py); one package per kind."""
