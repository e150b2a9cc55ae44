from civiscore.cli import app

app(prog_name="civiscore")
