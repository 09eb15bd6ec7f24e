from nanobot.cli.commands import app

app()
