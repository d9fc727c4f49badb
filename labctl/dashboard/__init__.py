"""`labctl dashboard`: the lab's live status in a local web page (collector.py: one shared probe thread;
server.py: the aiohttp app on 127.0.0.1 behind a random token; static/: the page, its script and style)."""
