"""cellgap: one command line that gathers the subcommands of featurestore, decoder and api."""
