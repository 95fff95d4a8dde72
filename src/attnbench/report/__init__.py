"""What it means: a stored run (or every run) as Markdown, JSON, CSV or a self-contained HTML page with plots."""
