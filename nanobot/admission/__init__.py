"""Fair limits per sender: whether a message is admitted before its turn is queued, and the LLM tokens a
sender spends (`limits` in the config; counted in Redis across every gateway and worker in distributed mode)."""
