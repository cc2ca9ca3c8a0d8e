"""`python -m engine.video2world`: one video (or a batch) continuing an image or a clip.

The flags are the seed's (see --help); engine/cli_args.py builds them from GenerationSpec.
"""

from engine.cli_args import entry_point

if __name__ == "__main__":
    entry_point("video2world")
