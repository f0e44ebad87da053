"""Runner: `ftcli train` end to end. One call per arrow of the data flow (train.py): recipe -> plan ->
model -> doctor -> data -> stage -> run directory (rundir.py, checkpoints.py) -> export.

May import every package below the CLI: stages, doctor, export, engine, rewards, models, data, recipe.
"""
