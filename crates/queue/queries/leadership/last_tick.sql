SELECT max(tick) FROM scheduler_ticks WHERE cycle = $1
