from birdclef.cli import app

app()
