"""Built-in freezing strategies, one plugin module each."""
