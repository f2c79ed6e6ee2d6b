"""asyncio recipes."""
