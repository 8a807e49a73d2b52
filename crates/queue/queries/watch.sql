UPDATE jobs SET watched = true WHERE id = $1 AND NOT watched
