-- one database per district (the state's database is POSTGRES_DB)
CREATE DATABASE district_1;
CREATE DATABASE district_2;
