"""The loop back to training: unsure predictions queued for review, people's labels, the labelled set."""
