"""One module per ``zoo`` command that is not a Lightning subcommand (see :data:`zoo.cli.COMMANDS`)."""
