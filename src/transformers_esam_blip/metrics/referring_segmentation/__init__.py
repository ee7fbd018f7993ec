"""The `evaluate` metric script's folder; a package too, so that its numpy functions can be imported directly."""
