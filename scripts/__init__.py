"""Developer scripts: code generation and the checks that generated files are current."""
