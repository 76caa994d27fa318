"""Running the pipeline's steps on an HTCondor pool: submit descriptions and DAGs."""
