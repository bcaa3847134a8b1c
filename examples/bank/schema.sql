-- The bank: clients, their accounts, and the accounts' transactions (SQLite).
CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, tax_rate DOUBLE NOT NULL);
CREATE TABLE accounts (id INTEGER PRIMARY KEY, client_id INTEGER NOT NULL, branch TEXT NOT NULL);
CREATE TABLE transactions (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL, kind TEXT NOT NULL, amount DOUBLE NOT NULL);
INSERT INTO clients VALUES (1, 'Ada', 0.25), (2, 'Bo', 0.30), (3, 'Cy', 0.20);
INSERT INTO accounts VALUES (10, 1, 'north'), (11, 1, 'south'), (20, 2, 'north'), (30, 3, 'east');
INSERT INTO transactions VALUES
  (1, 10, 'deposit', 100), (2, 10, 'withdrawal', 40), (3, 11, 'deposit', 250),
  (4, 20, 'deposit', 80), (5, 20, 'deposit', 20), (6, 30, 'withdrawal', 5), (7, 30, 'deposit', 60);
