"""The gateway: channels, the agent, cron and heartbeat, wired together in one process."""
