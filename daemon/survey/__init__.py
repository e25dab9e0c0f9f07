"""The survey: candidates × the journal → queued, done, failed, pending or deferred.

``survey`` weighs one candidate (``SurveyPass`` many, reading the journal in bulk); ``done``
recognises finished inputs from stats, stamps and signatures without reading them; ``marks``
lets a rescan skip whole folders unchanged since all their inputs were found done;
``forecast`` puts a verdict in words (what a run would do, and why) for ``once --dry-run``.
"""
