main :: IO ()
main = putStrLn "runner-test: haskell ok"
