#lang racket/base
(displayln "runner-test: racket ok")
