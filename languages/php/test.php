<?php
$lang = "php";
echo "runner-test: $lang ok\n";
