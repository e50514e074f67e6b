SELECT 'runner-test: ' || 'sqlite3' || ' ok';
