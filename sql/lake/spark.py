"""The raw lake in Spark (PySpark): every observation as a DataFrame.

    spark-submit sql/lake/spark.py s3a://my-bucket/raw/klines

The path is the lake's root (`lake.bucket` and `lake.prefix`; s3a:// needs
hadoop-aws on the classpath, or pass a local directory). Spark discovers the
partition columns (exchange, interval, date, hour) from the keys (the symbol
is a column of each line) and
reads the .gz objects by their extension. Prices and volumes are decimal
strings in the lake; they are cast to DecimalType(38, 18), never to double.
Not run by the test suite (no Spark here): the DuckDB snippet beside it is,
against the same layout.
"""

import sys

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (BooleanType, IntegerType, LongType, StringType,
                               StructField, StructType)

root = sys.argv[1].rstrip("/")
spark = SparkSession.builder.appName("klines-lake").getOrCreate()

# exchange comes from the partition path; the schema leaves it out so the
# data and partition columns do not clash.
schema = StructType([
    StructField("kind", StringType()),
    StructField("symbol", StringType()),
    StructField("interval_seconds", IntegerType()),
    StructField("interval_start", StringType()),
    StructField("interval_end", StringType()),
    StructField("is_final", BooleanType()),
    StructField("event_ts", StringType()),
    StructField("received_ts", StringType()),
    StructField("open", StringType()),
    StructField("high", StringType()),
    StructField("low", StringType()),
    StructField("close", StringType()),
    StructField("volume", StringType()),
    StructField("quote_volume", StringType()),
    StructField("trade_count", LongType()),
    StructField("vwap", StringType()),
    StructField("source", StringType()),
    StructField("payload", StringType()),
])

observations = (
    spark.read.schema(schema)
    .option("basePath", root)
    .json(f"{root}/exchange=*/interval=*/date=*/hour=*/")
    .withColumn("interval_start", F.to_timestamp("interval_start"))
    .withColumn("received_ts", F.to_timestamp("received_ts"))
)
for c in ["open", "high", "low", "close", "volume", "quote_volume"]:
    observations = observations.withColumn(c, F.col(c).cast("decimal(38,18)"))

newest = Window.partitionBy("exchange", "symbol", "interval", "interval_start") \
    .orderBy(F.col("received_ts").desc())
finals = (
    observations.where("is_final")
    .withColumn("rn", F.row_number().over(newest))
    .where("rn = 1")
    .drop("rn")
)

finals.groupBy("exchange", "symbol", "date").count().orderBy("exchange", "symbol", "date").show()
