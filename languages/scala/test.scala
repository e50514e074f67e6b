object Main {
  def main(args: Array[String]): Unit = {
    println("runner-test: scala ok")
  }
}
