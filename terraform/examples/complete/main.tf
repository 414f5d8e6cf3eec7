# Every part of the module: the data lake bucket, the events topic with an e-mail
# subscription, Redis projections, the secrets, the ECS cluster with either the scheduled
# batch task or the CDC service, the Lambda function when a package is given, logs, metric
# filters and alarms. The sharded initial load (shard_count) is off: this pipeline warms Redis,
# which a sharded load does not do yet.
module "godwit" {
  source = "../../modules/godwit"

  name                 = var.name
  vpc_id               = var.vpc_id
  private_subnet_ids   = var.private_subnet_ids
  database_cidr_blocks = var.database_cidr_blocks
  database_url         = var.database_url
  image                = var.image
  ecr_repository_arn   = var.ecr_repository_arn
  alert_email          = var.alert_email

  mode           = "full-load-and-cdc"
  tables_include = ["public.orders", "public.customers", "public.products"]
  target_prefix  = "lake"
  target_format  = "parquet"

  redis_enabled      = true
  redis_cluster_mode = false
  redis_key_prefix   = "shop:"
  cache_projections = [
    {
      table  = "public.products"
      type   = "hash"
      key    = "product:{id}"
      fields = ["name", "price"]
    },
    {
      table  = "public.products"
      type   = "zset"
      key    = "products:by_price"
      member = "{id}"
      score  = "price"
    },
  ]

  batch_schedule = var.shape == "batch" ? "rate(1 hour)" : null
  cdc_service    = var.shape == "service"
  # A sharded initial load (shard_count = 2..64) is for pipelines without cache_projections.
  shard_count = 0

  lambda_zip_path = var.lambda_zip_path
  lambda_schedule = "rate(15 minutes)"

  lifecycle_noncurrent_days = 30
  lifecycle_transition_days = 90

  tags = {
    project = "godwit-example"
  }
}
