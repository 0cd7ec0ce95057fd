"""The online runtime: exported policies driving the interleaved detector on video files (``gistgym detect``)."""
