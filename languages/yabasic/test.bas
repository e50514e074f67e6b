print "runner-test: yabasic ok"
