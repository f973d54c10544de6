"""Developer tools: the demo fleet and the fleet load simulator (they run real agents)."""
