"""Developer tools: generators for committed files (dashboard, docs). Not shipped in the package."""
