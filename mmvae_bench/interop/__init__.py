"""Models trained by other libraries, brought into the suite (``mmvae-bench import``)."""
