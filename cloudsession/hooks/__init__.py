"""Event hooks: delivering recorded share events to webhooks and commands (docs/hooks.md)."""
