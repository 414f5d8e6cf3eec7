output "pipeline_url" {
  description = "godwit run <this>"
  value       = module.godwit.pipeline_url
}

output "pipeline_toml" {
  description = "The pipeline file as uploaded."
  value       = module.godwit.pipeline_toml
}

output "target_url" {
  description = "Where the data lands."
  value       = module.godwit.target_url
}

output "ecs_cluster_arn" {
  description = "ECS cluster."
  value       = module.godwit.ecs_cluster_arn
}

output "batch_task_definition_arn" {
  description = "The batch task."
  value       = module.godwit.batch_task_definition_arn
}

output "shard_state_machine_arn" {
  description = "Start the sharded initial load with aws stepfunctions start-execution."
  value       = module.godwit.shard_state_machine_arn
}

output "security_group_id" {
  description = "Allow this security group in the database's."
  value       = module.godwit.security_group_id
}

output "sns_topic_arn" {
  description = "Events and alarms."
  value       = module.godwit.sns_topic_arn
}

output "log_group_name" {
  description = "godwit's JSON logs."
  value       = module.godwit.log_group_name
}
