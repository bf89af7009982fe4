"""Rendering: HTML pages of shares (``pages``) and the markdown, highlighting and diffs inside them (``html``)."""
