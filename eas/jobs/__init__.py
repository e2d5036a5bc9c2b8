"""One module per experiment kind; the only place that touches the store."""
