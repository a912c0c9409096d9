"""One module per ``lungdr`` subcommand: ``register(subparsers)`` adds the parser and sets ``func``."""
