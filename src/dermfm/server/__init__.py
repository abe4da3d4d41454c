"""dermfm's server: REST API, web app and case store, started by ``dermfm serve``."""
