"""From run folders to answers: results into pandas (``results``), comparison tables
(``compare``), leaderboard export (``leaderboard``) and plots (``plots``)."""
