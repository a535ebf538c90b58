"""CLI options shared by the end-to-end tests: tiny models that train in seconds on a CPU."""

# The built-in nets at their smallest (NetConfig's fields and the latent size), one thread.
TINY_NETS = [
    "--set",
    "latent_dim=4",
    "--set",
    "width=4",
    "--set",
    "features=16",
    "--threads",
    "1",
]
# JNF additionally has flows.
TINY_JNF = [*TINY_NETS, "--set", "flow_hidden=16"]
# One epoch per stage, quick protocol, on the toy dataset.
TINY_QUICK = ["--dataset", "circles-squares", "--epochs", "1", "--quick"]
TINY_RUN = [*TINY_QUICK, *TINY_JNF]
