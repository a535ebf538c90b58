"""CLI options shared by the end-to-end tests: a tiny JNF that trains in seconds on a CPU."""

# Model size: a few conv channels and a 4-d latent (JNF's field names).
TINY_JNF = [
    "--set",
    "latent_dim=4",
    "--set",
    "width=4",
    "--set",
    "features=16",
    "--set",
    "flow_hidden=16",
    "--threads",
    "1",
]
# One epoch per stage, quick protocol, on the toy dataset.
TINY_RUN = ["--dataset", "circles-squares", "--epochs", "1", "--quick", *TINY_JNF]
