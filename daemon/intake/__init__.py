"""Intake: files in an inbox → candidates, the inputs whose jobs the survey weighs.

``names`` says what a file is from its name and what is ignored; ``paths`` confines paths to
the inbox; ``parts`` knows which images other files name (masks, tween endpoints);
``candidates`` and ``scan`` find the inputs; ``settle`` and ``observers`` decide when a file
that events point at is ready; ``images`` and ``scenes`` read inputs safely.
"""
