"""ControlNet (and IP-Adapter) units: models, preprocessors, per-request units, application."""
